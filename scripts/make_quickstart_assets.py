#!/usr/bin/env python
"""Build the quickstarts' assets: tiny datasets and a tiny base model, offline.

    python scripts/make_quickstart_assets.py [--out DIR]      # DIR defaults to configs/quickstart
    python scripts/make_quickstart_assets.py --datasets-only  # the three .jsonl files; no torch

Writes, under DIR:

- `qa.jsonl`: short questions with 1-3 word answers (`question`, `answer`), made from
  templates over small fact tables (capitals, arithmetic, colours, opposites, animals).
  The SFT quickstart (configs/quickstart.yaml) trains on it.
- `preferences.jsonl`: one preference pair per row of qa.jsonl, in the same order
  (`prompt`, `chosen`, `rejected`), for the DPO and reward-model quickstarts. `prompt` is
  the question in the SFT quickstart's prompt format ("Question: ...\nAnswer:"), `chosen`
  its right answer as the SFT quickstart's completion (" Paris"), `rejected` a wrong answer
  of the same kind: another row's answer from the same fact table (" Rome"; for arithmetic,
  another result of the same operation), never the right one.
- `prompts.jsonl`: every fact of the arithmetic table as a prompt in the same format and
  its result as text (`prompt`, `solution`: "Question: What is 7 times 6?\nAnswer:", "42"),
  shuffled, for the online-RL quickstarts (GRPO, PPO), whose reward compares a completion
  with `solution`.
- `tiny-model/`: a tiny `LlamaForCausalLM` and its byte-level BPE tokenizer, loadable
  offline with `AutoModelForCausalLM` / `AutoTokenizer`. The model is briefly (~20 s)
  pre-trained on plain text stating the same facts ("The capital of France is Paris.",
  "What is the capital of France? It is Paris."), never in the quickstart's
  "Question: ...\nAnswer: ..." format, so that it is a small but sensible base model: it
  has seen the facts, and the quickstart's LoRA fine-tune teaches it the answer format.
  (A randomly initialised model barely moves under 60 LoRA steps: its frozen embeddings
  and head are noise.)
- `tiny-chat-model/`: the same weights and tokenizer for the inference quickstarts (rag,
  agent): positions up to 1024 tokens, room for a retrieved context, and a chat template.

The output is deterministic: fixed seeds (each dataset its own `random.Random`, so that
adding one leaves the others as they were), fixed iteration order, one CPU thread for the
pre-training, and on x86-64 the float kernels pinned to their AVX2 code paths (torch's
ATEN_CPU_CAPABILITY and MKL's MKL_CBWR, set below before torch is imported): running it
twice gives byte-identical files. The pinning is there so that other x86-64 CPUs (an
AVX-512 Intel CI runner) get the same weights bit for bit as the AMD EPYC (AVX2) that made
the shipped ones; unpinned, torch and MKL pick kernels that sum in another order and the
pre-trained weights differ in the last bits. That has been checked on AVX2 hardware only.
Same versions of torch, transformers and tokenizers assumed (config.json records
transformers'); on other CPUs (ARM) the output is deterministic run to run but not equal
to the shipped files. `--datasets-only` writes the three datasets alone (they need neither
torch nor the pinning, and are the same on every platform) and leaves tiny-model/ as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path

# Read by torch and MKL when they load, so set before anything imports torch. Without them the
# pre-trained weights depend on which SIMD kernels the CPU gets (AVX2 vs AVX-512 sum in another order).
X86 = platform.machine().lower() in ("x86_64", "amd64")
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"} if X86 else {}
os.environ.update(PINNED_ENV)

SEED = 20240601  # qa.jsonl and the model
PREFERENCES_SEED = SEED + 1  # the rejected answers of preferences.jsonl
PROMPTS_SEED = SEED + 2  # the order of prompts.jsonl
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "configs" / "quickstart"

# ---------------------------------------------------------------------------------------------
# Fact tables
# ---------------------------------------------------------------------------------------------

CAPITALS = (
    ("Argentina", "Buenos Aires"),
    ("Australia", "Canberra"),
    ("Austria", "Vienna"),
    ("Belgium", "Brussels"),
    ("Brazil", "Brasilia"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("China", "Beijing"),
    ("Colombia", "Bogota"),
    ("Cuba", "Havana"),
    ("Denmark", "Copenhagen"),
    ("Egypt", "Cairo"),
    ("Finland", "Helsinki"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Ghana", "Accra"),
    ("Greece", "Athens"),
    ("Hungary", "Budapest"),
    ("India", "New Delhi"),
    ("Indonesia", "Jakarta"),
    ("Iran", "Tehran"),
    ("Ireland", "Dublin"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Mexico", "Mexico City"),
    ("Morocco", "Rabat"),
    ("Netherlands", "Amsterdam"),
    ("Nigeria", "Abuja"),
    ("Norway", "Oslo"),
    ("Peru", "Lima"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Russia", "Moscow"),
    ("South Korea", "Seoul"),
    ("Spain", "Madrid"),
    ("Sweden", "Stockholm"),
    ("Switzerland", "Bern"),
    ("Thailand", "Bangkok"),
    ("Turkey", "Ankara"),
)

# (thing, colour); the thing as it reads after "What colour is".
COLOURS = (
    ("grass", "green"),
    ("the sky", "blue"),
    ("snow", "white"),
    ("coal", "black"),
    ("blood", "red"),
    ("a banana", "yellow"),
    ("a lemon", "yellow"),
    ("a tomato", "red"),
    ("milk", "white"),
    ("a carrot", "orange"),
    ("a crow", "black"),
    ("chocolate", "brown"),
    ("a strawberry", "red"),
    ("an emerald", "green"),
    ("a lime", "green"),
    ("the sea", "blue"),
    ("a pumpkin", "orange"),
    ("an elephant", "grey"),
    ("a flamingo", "pink"),
    ("soil", "brown"),
    ("a cherry", "red"),
    ("a plum", "purple"),
    ("a violet", "purple"),
    ("a frog", "green"),
    ("ash", "grey"),
    ("the sun", "yellow"),
)

OPPOSITES = (
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("wet", "dry"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("high", "low"),
    ("long", "short"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("thick", "thin"),
    ("left", "right"),
    ("day", "night"),
    ("push", "pull"),
    ("win", "lose"),
    ("first", "last"),
    ("near", "far"),
    ("clean", "dirty"),
    ("true", "false"),
    ("north", "south"),
    ("east", "west"),
    ("good", "bad"),
    ("easy", "difficult"),
    ("above", "below"),
    ("before", "after"),
    ("young", "old"),
)

SOUNDS = (
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("pig", "oink"),
    ("lion", "roar"),
    ("owl", "hoot"),
    ("horse", "neigh"),
    ("snake", "hiss"),
    ("bee", "buzz"),
    ("mouse", "squeak"),
    ("wolf", "howl"),
    ("donkey", "bray"),
)

BABIES = (
    ("dog", "puppy"),
    ("cat", "kitten"),
    ("cow", "calf"),
    ("sheep", "lamb"),
    ("horse", "foal"),
    ("duck", "duckling"),
    ("frog", "tadpole"),
    ("bear", "cub"),
    ("kangaroo", "joey"),
    ("pig", "piglet"),
    ("deer", "fawn"),
    ("goose", "gosling"),
    ("swan", "cygnet"),
    ("owl", "owlet"),
)

# Arithmetic: every sum and product of 1..9, every difference a - b with 1 <= b <= a <= 9.
OPERATIONS = (
    ("plus", lambda a, b: a + b),
    ("minus", lambda a, b: a - b),
    ("times", lambda a, b: a * b),
)
ARITHMETIC_ROWS_PER_OPERATION = 45


def arithmetic_facts() -> list[tuple[int, str, int, int]]:
    """(a, operation, b, result) for every fact in the table, in a fixed order."""
    facts = []
    for name, fn in OPERATIONS:
        for a in range(1, 10):
            for b in range(1, 10):
                if name == "minus" and b > a:
                    continue
                facts.append((a, name, b, fn(a, b)))
    return facts


# ---------------------------------------------------------------------------------------------
# The Q&A dataset
# ---------------------------------------------------------------------------------------------


def qa_facts() -> list[tuple[str, str, str]]:
    """(table, question, answer) for every row of qa.jsonl, in its fixed (seeded, shuffled) order.

    `table` names the fact table the row comes from ("capitals", ..., "arithmetic:plus").
    """
    rows: list[tuple[str, str, str]] = []
    for country, capital in CAPITALS:
        rows.append(("capitals", f"What is the capital of {country}?", capital))
        rows.append(("capitals", f"Which city is the capital of {country}?", capital))
        rows.append(("capitals", f"Name the capital city of {country}.", capital))
    for thing, colour in COLOURS:
        rows.append(("colours", f"What colour is {thing}?", colour))
        rows.append(("colours", f"What is the colour of {thing}?", colour))
    for a, b in OPPOSITES:
        rows.append(("opposites", f"What is the opposite of {a}?", b))
        rows.append(("opposites", f"What is the opposite of {b}?", a))
        rows.append(("opposites", f"Give the opposite of {a}.", b))
    for animal, sound in SOUNDS:
        rows.append(("sounds", f"What sound does a {animal} make?", sound))
        rows.append(("sounds", f"What does a {animal} say?", sound))
    for animal, baby in BABIES:
        rows.append(("babies", f"What is a baby {animal} called?", baby))
        rows.append(("babies", f"What do you call a young {animal}?", baby))
    rng = random.Random(SEED)
    for name, _ in OPERATIONS:
        facts = [f for f in arithmetic_facts() if f[1] == name]
        for a, op, b, result in rng.sample(facts, ARITHMETIC_ROWS_PER_OPERATION):
            rows.append((f"arithmetic:{op}", f"What is {a} {op} {b}?", str(result)))
    rng.shuffle(rows)
    return rows


def qa_rows() -> list[dict[str, str]]:
    """The dataset's rows, in a fixed (seeded, shuffled) order."""
    return [{"question": q, "answer": a} for _, q, a in qa_facts()]


# The SFT quickstart's formats (configs/quickstart.yaml, spec.dataset.preprocessing); the
# preference and prompt datasets are written in them too.
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
COMPLETION_TEMPLATE = " {answer}"


def preference_rows() -> list[dict[str, str]]:
    """One (prompt, chosen, rejected) pair per row of qa.jsonl, in its order.

    `rejected` is drawn from the other answers of the row's fact table (the distinct answers of
    its rows, in first-seen order), never the right one, with its own seeded generator.
    """
    facts = qa_facts()
    answers: dict[str, dict[str, None]] = {}
    for table, _, answer in facts:
        answers.setdefault(table, {})[answer] = None
    rng = random.Random(PREFERENCES_SEED)
    rows = []
    for table, question, answer in facts:
        wrong = rng.choice([a for a in answers[table] if a != answer])
        rows.append(
            {
                "prompt": PROMPT_TEMPLATE.format(question=question),
                "chosen": COMPLETION_TEMPLATE.format(answer=answer),
                "rejected": COMPLETION_TEMPLATE.format(answer=wrong),
            }
        )
    return rows


def prompt_rows() -> list[dict[str, str]]:
    """Every arithmetic fact as (prompt, solution), shuffled with its own seeded generator."""
    rows = [
        {"prompt": PROMPT_TEMPLATE.format(question=f"What is {a} {op} {b}?"), "solution": str(result)}
        for a, op, b, result in arithmetic_facts()
    ]
    random.Random(PROMPTS_SEED).shuffle(rows)
    return rows


def write_datasets(out: Path) -> dict[str, int]:
    """Write qa.jsonl, preferences.jsonl and prompts.jsonl under `out`; their row counts by file name."""
    out.mkdir(parents=True, exist_ok=True)
    datasets = {"qa.jsonl": qa_rows(), "preferences.jsonl": preference_rows(), "prompts.jsonl": prompt_rows()}
    for name, rows in datasets.items():
        write_jsonl(rows, out / name)
    return {name: len(rows) for name, rows in datasets.items()}


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Pre-training text: the same facts as plain sentences, never in the Q&A format
# ---------------------------------------------------------------------------------------------


def pretraining_sentences() -> list[str]:
    """Every fact stated a few ways, as statements and as a question answered in the same line."""
    out: list[str] = []
    for country, capital in CAPITALS:
        out += [
            f"The capital of {country} is {capital}.",
            f"{capital} is the capital of {country}.",
            f"The capital city of {country} is {capital}.",
            f"What is the capital of {country}? It is {capital}.",
            f"Which city is the capital of {country}? {capital} is.",
        ]
    for thing, colour in COLOURS:
        out += [
            f"The colour of {thing} is {colour}.",
            f"{thing[0].upper() + thing[1:]} is {colour}.",
            f"What colour is {thing}? It is {colour}.",
        ]
    for a, b in OPPOSITES:
        out += [
            f"The opposite of {a} is {b}.",
            f"The opposite of {b} is {a}.",
            f"What is the opposite of {a}? It is {b}.",
            f"What is the opposite of {b}? It is {a}.",
        ]
    for animal, sound in SOUNDS:
        out += [
            f"A {animal} says {sound}.",
            f"The sound a {animal} makes is {sound}.",
            f"What does a {animal} say? It says {sound}.",
        ]
    for animal, baby in BABIES:
        out += [
            f"A baby {animal} is called a {baby}.",
            f"A young {animal} is a {baby}.",
            f"What is a baby {animal} called? It is a {baby}.",
        ]
    for a, op, b, result in arithmetic_facts():
        out += [
            f"{a} {op} {b} is {result}.",
            f"{a} {op} {b} equals {result}.",
            f"What is {a} {op} {b}? It is {result}.",
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
VOCAB_SIZE = 640


def build_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer (like GPT-2's), trained on `texts`; adds <s> in front of each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=128,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

MODEL_CONFIG = {
    # head_dim = hidden_size / num_attention_heads = 64: vLLM's CPU attention rejects smaller heads
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
}

PRETRAIN_STEPS = 500
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3
PRETRAIN_WARMUP = 25


def build_model(tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _batches(encoded: list[list[int]], pad_id: int, steps: int, batch: int) -> Iterator[tuple]:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        idx = torch.randint(len(encoded), (batch,), generator=generator).tolist()
        seqs = [encoded[i] for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        yield input_ids, mask, labels


def pretrain(model, tokenizer, sentences: list[str], steps: int = PRETRAIN_STEPS) -> list[float]:
    """Plain next-token training of all weights on `sentences`; one thread, so it is reproducible."""
    import torch

    encoded = [tokenizer(s)["input_ids"] + [tokenizer.eos_token_id] for s in sentences]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < PRETRAIN_WARMUP:
            return (step + 1) / PRETRAIN_WARMUP
        progress = (step - PRETRAIN_WARMUP) / max(1, steps - PRETRAIN_WARMUP)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    losses = []
    try:
        for input_ids, mask, labels in _batches(encoded, tokenizer.pad_token_id, steps, PRETRAIN_BATCH):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------


def build(out: Path, *, pretrain_steps: int = PRETRAIN_STEPS, verbose: bool = True) -> None:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if X86 and capability != "AVX2":
        print(
            f"warning: torch uses {capability} kernels, not AVX2 (imported before this script set ATEN_CPU_CAPABILITY?):"
        )
        print("         the weights will not be bit-identical to the shipped ones")
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    counts = write_datasets(out)
    rows = qa_rows()

    sentences = pretraining_sentences()
    # The tokenizer also sees the rows in the quickstart's prompt format (configs/quickstart.yaml).
    corpus = sentences + [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    tokenizer = build_tokenizer(corpus)
    model = build_model(tokenizer)
    losses = pretrain(model, tokenizer, sentences, steps=pretrain_steps) if pretrain_steps > 0 else []

    model_dir = out / "tiny-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(model_dir)

    write_chat_model(model_dir, out / "tiny-chat-model")

    if verbose:
        params = sum(p.numel() for p in model.parameters())
        print(", ".join(f"{name}: {n} rows" for name, n in counts.items()))
        print(f"pretraining sentences: {len(sentences)}")
        print(f"tokenizer: {len(tokenizer)} tokens; model: {params:,} parameters")
        if losses:
            print(f"pretraining: {len(losses)} steps, loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f}")
        print(f"wrote {out} in {time.perf_counter() - started:.1f}s")


CHAT_CONTEXT = 1024
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_chat_model(model_dir: Path, chat_dir: Path) -> None:
    """The inference quickstarts' model: the same weights and tokenizer, with room for a
    retrieved context (RoPE positions up to CHAT_CONTEXT) and a chat template, which an
    OpenAI-compatible server (`transformers serve`) needs to answer chat completions."""
    import shutil

    chat_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        shutil.copyfile(model_dir / name, chat_dir / name)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = CHAT_CONTEXT
    (chat_dir / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer["model_max_length"] = CHAT_CONTEXT
    tokenizer["chat_template"] = CHAT_TEMPLATE
    (chat_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--pretrain-steps", type=int, default=PRETRAIN_STEPS, help="0 ships a randomly initialised model"
    )
    parser.add_argument(
        "--datasets-only",
        action="store_true",
        help="write the .jsonl datasets only: no tokenizer, no model, no torch (tiny-model/ is left as it is)",
    )
    args = parser.parse_args(argv)
    if args.datasets_only:
        counts = write_datasets(args.out)
        print(", ".join(f"{name}: {n} rows" for name, n in counts.items()))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build(args.out, pretrain_steps=args.pretrain_steps)


if __name__ == "__main__":
    main()

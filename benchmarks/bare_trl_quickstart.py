"""The quickstart's work as a bare TRL script, with no MLOC and no Prefect: the baseline
that benchmarks/orchestration_overhead.py compares `mloc run` with.

Same model, data, split, templates, LoRA settings and hyperparameters as
configs/quickstart.yaml; loss before and after training; the adapter saved.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    spec = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())["spec"]
    prep, adapter = spec["dataset"]["preprocessing"], spec["model"]["adapter"]
    model_dir = str(CONFIGS / spec["model"]["source"]["path"])
    rows = load_dataset("json", data_files=str(CONFIGS / spec["dataset"]["source"]["path"]), split="train")
    parts = rows.train_test_split(test_size=spec["evaluation"]["held_out_fraction"], seed=42, shuffle=True)

    def fmt(row: dict) -> dict:
        return {
            "prompt": prep["prompt_template"].format(**row),
            "completion": prep["completion_template"].format(**row),
        }

    train, held_out = (parts[s].map(fmt, remove_columns=rows.column_names) for s in ("train", "test"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hyper = {k: float(v) if k == "learning_rate" else v for k, v in spec["hyperparameters"].items()}
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir),
            args=SFTConfig(output_dir=out, max_length=prep["max_seq_length"], use_cpu=True, disable_tqdm=True, **hyper),
            train_dataset=train,
            eval_dataset=held_out,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=adapter["r"],
                lora_alpha=adapter["lora_alpha"],
                lora_dropout=adapter["lora_dropout"],
                target_modules=adapter["target_modules"],
                task_type="CAUSAL_LM",
            ),
        )
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
        trainer.save_model(str(Path(out) / "final"))
    print(f"bare TRL: eval loss {before:.4f} -> {after:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()

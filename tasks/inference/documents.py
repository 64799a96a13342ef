"""The corpus of a retrieval task: documents read, chunked, embedded and stored.

Documents are `.txt` and `.md` files (one document each) and `.jsonl`/`.json`/`.csv`/
`.parquet` rows or a Hugging Face dataset (one document a row, its text in
`spec.retrieval.text_field`). LangChain's RecursiveCharacterTextSplitter cuts them into chunks
of `chunk_size` characters sharing `chunk_overlap`; each chunk's id is
``<document>#<n>``. The index is LangChain's in-memory vector store, saved as JSON in the
run's work dir under a key of the corpus, the embedding model and the chunking: a re-run
with the same three loads it instead of embedding again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    from configs.models import Retrieval

TEXT_SUFFIXES = (".txt", ".md")
ROW_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class CorpusError(ValueError):
    """The documents cannot be read as a corpus: none found, a row without text, an unknown file type."""


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: its id, text, cosine similarity and the document it comes from."""

    chunk_id: str
    text: str
    score: float
    source: str


def load_documents(path: str, source_type: str, retrieval: Retrieval) -> list[Document]:
    """The documents under ``path`` (a file or folder; a Hugging Face dataset's snapshot)."""
    from langchain_core.documents import Document

    field = retrieval.text_field
    where = "spec.retrieval.documents"
    root = Path(path)
    if source_type == "huggingface":
        split = getattr(retrieval.documents, "split", "train")
        subset = getattr(retrieval.documents, "subset", None)
        return _rows_as_documents(path, source_type, field, root.name, where, split=split, subset=subset)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    readable = [p for p in files if p.suffix in TEXT_SUFFIXES + ROW_SUFFIXES]
    if not readable:
        others = sorted({p.suffix or p.name for p in files})
        found = f" (it holds {', '.join(others[:5])} files)" if others else " (it is empty)"
        raise CorpusError(
            f"{where}: {path} holds no document{found} — give .txt or .md files, or .jsonl/.csv/.parquet rows "
            f"with a '{field}' column"
        )
    documents: list[Document] = []
    for file in readable:
        name = file.name if root.is_file() else file.relative_to(root).as_posix()
        if file.suffix in TEXT_SUFFIXES:
            text = file.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                documents.append(Document(page_content=text, metadata={"source": name}))
        else:
            documents.extend(_rows_as_documents(str(file), "local", field, name, where))
    if not documents:
        raise CorpusError(f"{where}: every document under {path} is empty — nothing to retrieve from")
    return documents


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _rows_as_documents(
    path: str, source_type: str, field: str, name: str, where: str, split: str = "train", subset: str | None = None
) -> list[Document]:
    from langchain_core.documents import Document

    from tasks.data import DataError, load_rows

    try:
        rows = load_rows(path, source_type, split=split, subset=subset)
    except DataError as exc:
        raise CorpusError(f"{where}: {exc}") from exc
    if field not in rows.column_names:
        raise CorpusError(
            f"{where}: {name} has no column '{field}' (spec.retrieval.text_field) — its columns are: "
            f"{', '.join(rows.column_names)}"
        )
    documents = []
    for index, row in enumerate(rows):
        text = row[field]
        if not isinstance(text, str):
            raise CorpusError(f"{where}: {name} row {index + 1}: '{field}' is {type(text).__name__}, not text")
        key = row.get("id")
        documents.append(
            Document(page_content=text, metadata={"source": str(key) if key is not None else f"{name}:{index + 1}"})
        )
    return documents


def chunk(documents: list[Document], retrieval: Retrieval) -> list[Document]:
    """The documents cut by LangChain's RecursiveCharacterTextSplitter, each chunk with its id."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=retrieval.chunk_size, chunk_overlap=retrieval.chunk_overlap, add_start_index=True
    )
    chunks = splitter.split_documents(documents)
    seen: dict[str, int] = {}
    for piece in chunks:
        source = piece.metadata["source"]
        seen[source] = seen.get(source, -1) + 1
        piece.metadata["chunk_id"] = f"{source}#{seen[source]}"
        piece.id = piece.metadata["chunk_id"]
    return chunks


def corpus_hash(chunks: list[Document]) -> str:
    """sha256 over the chunks' ids and texts: what the index was built from."""
    digest = hashlib.sha256()
    for piece in chunks:
        digest.update(piece.metadata["chunk_id"].encode() + b"\0" + piece.page_content.encode() + b"\0")
    return "sha256:" + digest.hexdigest()


@dataclass
class Index:
    store: InMemoryVectorStore
    chunks: int
    corpus_hash: str
    reused: bool
    path: Path


def build_or_load(
    chunks: list[Document], embeddings: Embeddings, embedding_hash: str, retrieval: Retrieval, folder: Path
) -> Index:
    """The vector store of ``chunks``: loaded from ``folder`` when an earlier run stored the
    same chunks embedded by the same model, else embedded now and stored there."""
    from langchain_core.vectorstores import InMemoryVectorStore

    corpus = corpus_hash(chunks)
    key = hashlib.sha256(json.dumps([corpus, embedding_hash]).encode()).hexdigest()[:16]
    path = folder / f"index-{key}.json"
    if path.is_file():
        return Index(InMemoryVectorStore.load(str(path), embeddings), len(chunks), corpus, True, path)
    store = InMemoryVectorStore(embeddings)
    store.add_documents(chunks, ids=[c.metadata["chunk_id"] for c in chunks])
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    store.dump(str(partial))
    partial.replace(path)  # a store half-written by a killed run is never loaded
    return Index(store, len(chunks), corpus, False, path)


def search(store: InMemoryVectorStore, query: str, top_k: int) -> list[Hit]:
    """The ``top_k`` chunks nearest to ``query``, best first."""
    found = store.similarity_search_with_score(query, k=top_k)
    return [
        Hit(chunk_id=doc.metadata["chunk_id"], text=doc.page_content, score=float(score), source=doc.metadata["source"])
        for doc, score in found
    ]


def hits_json(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"chunk_id": h.chunk_id, "source": h.source, "score": round(h.score, 6)} for h in hits]

"""A sentence-transformers model behind LangChain's ``Embeddings`` interface.

langchain-huggingface's HuggingFaceEmbeddings does this, but it pins huggingface-hub below 2,
which MLOC and transformers 5 are past; this is the part of it MLOC uses. Embeddings are
L2-normalised, so the vector store's cosine similarity is their dot product.
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings


class SentenceTransformerEmbeddings(Embeddings):
    def __init__(self, model_path: str, *, device: str | None = None, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(model_path, device=device, local_files_only=True)
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return [[float(x) for x in v] for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

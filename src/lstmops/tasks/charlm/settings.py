"""The charlm pipeline's settings: the shared sections (``config.Config``) and ``charlm``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lstmops.config import Config, TaskSection, Section


class CharLMConfig(TaskSection):
    """``task: charlm``: a character-level language model trained by stateful truncated BPTT."""

    source: str = Field(description="A .txt file, a directory of .txt files, or an s3:// key or prefix.")
    encoding: str = Field(default="utf-8", description="Text encoding of the source; bytes that do not decode fail ingest.")
    lowercase: bool = Field(default=True, description="Lowercase the text before the vocabulary is built.")
    min_chars: int = Field(default=10_000, ge=1, description="Validation: the text must have at least this many characters.")
    max_vocab: int = Field(default=256, ge=2, description="Validation: at most this many distinct characters.")
    val_fraction: float = Field(default=0.05, gt=0, lt=0.5, description="Contiguous validation span (after train).")
    test_fraction: float = Field(default=0.05, gt=0, lt=0.5, description="Contiguous test span (the end of the text).")
    embedding_size: int = Field(default=50, ge=1)
    hidden_size: int = Field(default=256, ge=1)
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    chunk_length: int = Field(default=100, ge=2, description="Characters per truncated-BPTT chunk.")
    streams: int = Field(default=128, ge=1, description="Parallel contiguous streams (the batch); state carries across chunks.")
    ngram_order: int = Field(default=5, ge=1, description="Order of the smoothed n-gram baseline.")
    temperatures: list[float] = Field(default_factory=lambda: [0.2, 0.5, 1.0, 1.2], min_length=1)
    sample_chars: int = Field(default=300, ge=1, description="Characters per sample in the report.")
    sample_prompt: str = Field(default="", description="Prompt of the report's samples ('' : the test text's first line).")
    model_name: str = Field(default="lstmops-charlm", description="Registered model name of this task.")


class Settings(Config):
    """A charlm pipeline's params.yaml."""

    SECTION: ClassVar[str] = "charlm"
    task: Literal["charlm"]
    charlm: CharLMConfig

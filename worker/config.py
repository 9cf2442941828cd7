"""One frozen, validated settings object. Environment: ``ROUTEWORKER_<NAME>``; optional file.

The file (TOML, YAML or JSON) is named by ``ROUTEWORKER_CONFIG_FILE``; environment variables win
over it. A bad value fails at start with one line naming the setting (:func:`load_settings`).
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from worker.contracts.limits import MAX_TOP_N, ContractMode, Limits
from worker.embedding.batching import DEFAULT_RUN_TOKENS
from worker.embedding.cpus import available_cpus
from worker.embedding.model import DEFAULT_MODEL, Variant
from worker.errors import ConfigError

ENV_PREFIX = "ROUTEWORKER_"
CONFIG_FILE_ENV = "ROUTEWORKER_CONFIG_FILE"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "routeworker"


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Everything a replica, the CLI and the benchmarks can be told. Immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    # --- Kafka ---
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Comma-separated bootstrap servers.")
    kafka_client_id: str = Field("routeworker", description="Client id sent to the brokers.")
    group_id: str = Field("routeworker", description="Consumer group of the query workers.")
    topic_queries: str = Field("queries", description="Input topic.")
    topic_intents: str = Field("routed-intents", description="Output topic.")
    topic_mutations: str = Field("route-mutations", description="Compacted route-mutation log.")
    topic_dlq: str = Field("queries.dlq", description="Dead-letter topic.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Required with SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (required with SASL_*).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client key (mutual TLS).")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key (secret)."
    )
    kafka_session_timeout_ms: int = Field(10_000, ge=1_000, description="Consumer group session timeout.")
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100, description="Consumer heartbeat interval.")
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1_000, description="Longest gap between polls.")
    kafka_request_timeout_ms: int = Field(30_000, ge=1_000, description="Broker request timeout.")
    kafka_linger_ms: int = Field(
        2, ge=0, description="Producer linger: batches acks of one batch of intents."
    )
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Compression of the records this replica produces."
    )
    kafka_idempotence: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Idempotent producer (per-key order through retries): auto = where the broker allows it.",
    )
    produce_deadline_s: float = Field(
        120.0,
        gt=0,
        description="Longest wait for an output record's acknowledgement (retries included) before stopping.",
    )
    kafka_fetch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Most bytes per fetch.")
    kafka_fetch_max_wait_ms: int = Field(
        100, ge=0, le=10_000, description="Longest a fetch waits at the broker for new records."
    )
    commit_interval_ms: int = Field(1_000, ge=10, description="Cadence of offset commits.")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: intents, dead letters and input offsets in one transaction "
        "(needs a broker with transactions; readers set isolation.level=read_committed).",
    )
    transaction_interval_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description="exactly_once: how long a transaction stays open before it is committed "
        "(more batches per commit, later visibility); 0 = at once.",
    )
    kafka_transaction_timeout_ms: int = Field(
        30_000,
        ge=1_000,
        description="exactly_once: the broker aborts a transaction open longer (a frozen replica's).",
    )
    # --- Redis (optional shared embedding cache) ---
    redis_url: SecretStr | None = Field(
        None, description="e.g. redis://:password@host:6379/0; unset = in-process LRU."
    )
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="TTL of cached embeddings in Redis.")
    local_cache_size: int = Field(
        20_000,
        ge=0,
        description="Entries of the in-process LRU caches (embeddings without Redis; decisions); 0 = none.",
    )
    # --- model and encoder pool ---
    model_name: str = Field(DEFAULT_MODEL, description="Embedding model (fastembed name).")
    model_variant: Variant = Field(
        "fp32",
        description="fp32, or int8: static, as batch-independent as fp32 and faster, but it misses the "
        "accuracy gate for the default on CLINC150 (benchmarks/variants.py).",
    )
    model_path: Path | None = Field(None, description="Directory of an ONNX export; default: prepared cache.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Model exports and weights.")
    encoder_threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        le=64,
        description="ONNX sessions in the pool, 1 intra-op thread each, all sharing every batch; "
        "default: one per CPU this process may use (its affinity, capped by its cgroup CPU quota).",
    )
    encoder_max_pending: int = Field(8, ge=1, description="Embedding batches queued before callers wait.")
    encoder_run_tokens: int = Field(
        DEFAULT_RUN_TOKENS,
        ge=1,
        le=1 << 20,
        description="Most tokens (padding included) per model run: a batch's texts go in length order.",
    )
    # --- batching and flow control ---
    # 256: a batch is this large only when a backlog waits (batches grow with the load), and there
    # two sessions drain it faster than in batches of 32 (benchmarks/pipeline.py runs both)
    batch_size: int = Field(256, ge=1, le=4096, description="Most queries per batch.")
    # 0 by default: a batch is formed when the embedding stage can take one, and takes every query
    # that arrived meanwhile (so batches grow with the load); waiting on top of that only delays a
    # query that arrives at an idle encoder, where companions within a few ms are rare
    batch_wait_ms: int = Field(
        0, ge=0, le=10_000, description="Longest wait to fill a batch once its first query is fetched."
    )
    max_in_flight_batches: int = Field(4, ge=1, description="Batches in flight before partitions pause.")
    # --- limits ---
    max_message_bytes: int = Field(64 * 1024, ge=256, description="Largest query record accepted.")
    max_text_chars: int = Field(4_000, ge=1, description="Longest query text accepted.")
    max_top_n: int = Field(20, ge=1, le=MAX_TOP_N, description="Most candidates a query may ask for.")
    max_mutation_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest route-mutation record.")
    contract_mode: ContractMode = Field(
        "tolerant",
        description="Query fields this version does not know: tolerant ignores and counts them, strict "
        "dead-letters the query (unknown_field). Route mutations are always read tolerantly.",
    )
    # --- routing ---
    top_n: int = Field(3, ge=1, le=MAX_TOP_N, description="Candidates per routed intent by default.")
    explain_all: bool = Field(
        False, description="Explain every routed intent, as if each query set `explain` (costs a little CPU)."
    )
    routing_search_k: int = Field(32, ge=1, le=1024, description="Nearest utterances retrieved per query.")
    routing_top_k: int = Field(5, ge=1, le=1024, description="Best utterances per route in its score.")
    routing_default_threshold: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Threshold of routes without their own while no calibration is in service.",
    )
    routing_margin: float = Field(
        0.0, ge=0.0, le=2.0, description="How much the winner must beat the runner-up by, uncalibrated."
    )
    routing_head: bool = Field(
        True, description="Serve the learned head of the calibration in service; calibrations train one."
    )
    routing_head_weight: float | None = Field(
        None, ge=0.0, le=1.0, description="Overrides the calibrated weight of the head; unset = calibrated."
    )
    routing_head_max_routes: int = Field(
        2_000, ge=1, description="Largest route table a calibration trains a head for (cost grows with it)."
    )
    routing_no_match_rate: float = Field(
        0.02, ge=0.0, lt=1.0, description="Share of in-scope queries a self-fit threshold may refuse."
    )
    # --- state and process ---
    background_nice: int = Field(
        10, ge=0, le=19, description="Niceness added to background threads (route apply, index rebuild)."
    )
    store_path: Path = Field(
        Path("var/routeworker.sqlite3"), description="SQLite route store of this replica."
    )
    overlay_max_rows: int = Field(
        16_384,
        ge=1,
        description="Vectors the route table's write-ahead overlay may hold; beyond, live mutations "
        "wait for the index rebuild (queries never wait).",
    )
    resume_margin_s: float = Field(
        300.0,
        ge=0,
        description="A replica away from the mutation log longer than its delete.retention.ms less "
        "this replays the whole log instead of resuming (covers clock skew and replication delay).",
    )
    replica_id: str = Field(default_factory=_default_replica_id, description="Names this replica in intents.")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="Grace period to finish in-flight work.")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP collector URL; unset = no export.")
    health_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP port for /livez, /readyz, /metrics."
    )
    liveness_stall_s: float = Field(
        60.0,
        gt=0,
        description="/livez fails when records wait or batches are in flight and none finishes this long.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism is None:
            raise ValueError("kafka_sasl_mechanism is required with a SASL security protocol")
        if self.transaction_interval_ms * 2 > self.kafka_transaction_timeout_ms:
            raise ValueError("transaction_interval_ms must be at most half of kafka_transaction_timeout_ms")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError("kafka_sasl_username is required with a SASL security protocol")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (mutual TLS)")
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                "kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms"
            )
        return self

    @property
    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_text_chars=self.max_text_chars,
            max_top_n=self.max_top_n,
            max_mutation_bytes=self.max_mutation_bytes,
            contract_mode=self.contract_mode,
        )

    def redacted(self) -> dict[str, Any]:
        """Settings as plain values with every secret masked: safe to log or print."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, *_file_source(settings_cls))


def _file_source(settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
    """pydantic-settings' own source for the file named by ROUTEWORKER_CONFIG_FILE, by its suffix."""
    name = os.environ.get(CONFIG_FILE_ENV)
    if not name:
        return ()
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}: no such file: {path}")
    if path.suffix == ".toml":
        return (_Toml(settings_cls, toml_file=path),)
    if path.suffix in (".yaml", ".yml"):
        return (_Yaml(settings_cls, yaml_file=path),)
    return (_Json(settings_cls, json_file=path),)


class _MappingOnly:
    """Refuses a file whose document is not a mapping (a YAML list, a JSON number) in one line."""

    def _read_file(self, path: Any) -> dict[str, Any]:
        data: object = super()._read_file(path)  # type: ignore[misc]
        if not isinstance(data, dict):
            raise ConfigError(f"{CONFIG_FILE_ENV}: {path} must hold a mapping of setting names to values")
        return data


class _Toml(_MappingOnly, TomlConfigSettingsSource):
    pass


class _Yaml(_MappingOnly, YamlConfigSettingsSource):
    pass


class _Json(_MappingOnly, JsonConfigSettingsSource):
    pass


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning any validation failure into one readable :class:`ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        name = f"{ENV_PREFIX}{loc.upper()}" if loc else "settings"
        value = first.get("input")
        shown = "" if loc in _SECRET_FIELDS or isinstance(value, dict) else f" (got {value!r})"
        raise ConfigError(f"{name}: {first['msg']}{shown}") from None
    except (OSError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}: {' '.join(str(exc).split())}") from None


_SECRET_FIELDS = frozenset({"kafka_sasl_password", "kafka_ssl_key_password", "redis_url"})

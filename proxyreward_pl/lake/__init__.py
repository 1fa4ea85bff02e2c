"""The data lake: Parquet tables checked against `datalake/sql/schema.sql` (`contract`), written in atomic
transactions and read through DuckDB views (`store`), and the `runs` table every stage records itself in
(`runs`)."""

from .contract import LakeError, ValidationError, contract
from .store import Lake, Transaction

__all__ = ["Lake", "LakeError", "Transaction", "ValidationError", "contract"]

"""The forecasts as a SQL table too (``monitor.sql``), for whoever reads forecasts with SQL.

The primary key is (model, version, origin, step), and rows are inserted with "on conflict do
nothing": a (version, origin) already in the table is left as it was, as in the Parquet store.
"""

from __future__ import annotations

import pandas as pd

from lstmops.errors import ServiceUnavailable


def table(name: str):
    from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table

    meta = MetaData()
    return Table(
        name, meta,
        Column("model", String(250), primary_key=True), Column("version", Integer, primary_key=True),
        Column("origin", DateTime, primary_key=True), Column("step", Integer, primary_key=True),
        Column("target_time", DateTime, nullable=False), Column("prediction", Float, nullable=False),
        Column("issued_at", DateTime(timezone=True), nullable=False),
    )  # fmt: skip


def insert_ignoring_duplicates(engine, target, rows: list[dict]) -> int:
    """Insert the rows whose key is not in the table yet; the number inserted."""
    from sqlalchemy import func, insert, select, tuple_

    if engine.dialect.name in ("postgresql", "sqlite"):
        dialect = __import__(f"sqlalchemy.dialects.{engine.dialect.name}", fromlist=["insert"])
        statement = dialect.insert(target).on_conflict_do_nothing()
        with engine.begin() as conn:
            before = conn.execute(select(func.count()).select_from(target)).scalar_one()
            conn.execute(statement, rows)
            return conn.execute(select(func.count()).select_from(target)).scalar_one() - before
    keys = [(r["model"], r["version"], r["origin"], r["step"]) for r in rows]
    cols = (target.c.model, target.c.version, target.c.origin, target.c.step)
    with engine.begin() as conn:
        present = set(conn.execute(select(*cols).where(tuple_(*cols).in_(keys))).all())
        new = [r for r, k in zip(rows, keys, strict=True) if k not in present]
        if new:
            conn.execute(insert(target), new)
        return len(new)


def write_sql(url: str, name: str, rows: pd.DataFrame) -> int:
    """Write forecast rows (the store's columns) to table ``name``; creates it when missing."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        target = table(name)
        target.metadata.create_all(engine, checkfirst=True)
        records = [
            {"model": r.model, "version": int(r.version), "origin": r.origin.to_pydatetime(), "step": int(r.step),
             "target_time": r.target_time.to_pydatetime(), "prediction": float(r.prediction),
             "issued_at": r.issued_at.to_pydatetime()}
            for r in rows.itertuples()
        ]  # fmt: skip
        return insert_ignoring_duplicates(engine, target, records) if records else 0
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).strip().splitlines()[0]
        raise ServiceUnavailable(f"forecasts table {name} at {where}: {first}") from None
    finally:
        engine.dispose()

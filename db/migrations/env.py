"""Alembic environment: runs the migrations online against the configured URL."""

from alembic import context

from db.engine import make_engine
from db.schema import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()

from alembic import context

from openanalytics.stores.sql import Base
import openanalytics.projects.models  # noqa: F401  (registers tables)
import openanalytics.auth.models  # noqa: F401
import openanalytics.goals.models  # noqa: F401
import openanalytics.privacy.models  # noqa: F401

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()

"""Results database: typed schema, engine and sessions, migrations and writes."""

"""The embedded SQLite ledger (`SQLiteStore`): connection and group commit, schema, money steps, audit."""

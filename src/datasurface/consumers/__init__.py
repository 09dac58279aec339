"""What consumers read (docs/consumers.md): history in time and as-of queries on forensic platforms
(`history`), and workspaces, each a schema of its own with exactly its datasets (`workspaces`)."""

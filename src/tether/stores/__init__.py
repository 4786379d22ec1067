"""Session stores (memory, SQLite, Redis) behind one async interface."""

"""The asyncio adapter: the only part of tether that does I/O."""

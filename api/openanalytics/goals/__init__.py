"""Goals: named conditions on events (an event name, an event type, a page, or any conversion)."""

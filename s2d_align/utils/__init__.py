"""Small helpers shared by every layer (no dependency on anything above ``config``)."""

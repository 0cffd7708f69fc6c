"""Where LightRAG Server's API is mounted: its paths under this prefix (its root paths are ours).

Each router of the package carries the prefix itself, so every route knows its full path (the JSON
body limits and the route checks read it)."""

PREFIX = "/lightrag"

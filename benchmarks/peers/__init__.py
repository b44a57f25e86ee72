"""The project's peers, each serving the same compute (`compute.py`) the way its own docs set it
up; `run.py` measures them and this service in one run (`make benchmark-peers`, docs/peers.md)."""

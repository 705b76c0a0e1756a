"""The team stack (docker-compose.yml) without Docker: the compose file read as compose reads it, and its
services run as plain processes on 127.0.0.1."""

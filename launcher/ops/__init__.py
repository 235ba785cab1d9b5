"""Operations: logs, status, health and metrics, control socket, systemd."""

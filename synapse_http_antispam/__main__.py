"""`python -m synapse_http_antispam check -c homeserver.yaml`: the same as the console script
`synapse-http-antispam`, for environments whose scripts directory is not on PATH (Synapse's
Debian virtualenv, Docker images)."""

from synapse_http_antispam.check import main

if __name__ == "__main__":
    main()

#!/bin/sh
# Entry point of both Airflow images, as in the official Airflow image: `docker run IMAGE
# scheduler` and the compose file's `command: celery worker ...` run `airflow scheduler` and
# `airflow celery worker ...`; a shell, Python or MPI command runs as it is. `exec`, so that
# Airflow is dumb-init's child: with DUMB_INIT_SETSID=0 (the workers) a `docker stop` reaches
# Celery alone, which then finishes its running tasks (warm shutdown).
case "$1" in
    bash | sh | python | python3 | mpiexec) exec "$@" ;;
esac
exec airflow "$@"

"""Connection arguments for the embedded default's SQLite database (``make demo``, the tests'
standalone stacks), which Airflow imports by the paths that ``SQLITE_SETTINGS`` names.

sqlite3 waits 5 s for another process's write lock and then fails the statement. On a busy
2-core machine the API server's insert for a triggered run could meet the scheduler's lock for
longer and answer HTTP 500 ("database is locked"); waiting up to a minute turns that into a
slower answer. Postgres (``make demo-prod``, production) has no such lock.
"""

SYNC = {"timeout": 60}
ASYNC = {"timeout": 60}

SQLITE_SETTINGS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SYNC",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.ASYNC",
}

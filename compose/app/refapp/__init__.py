"""celery-stack reference application.

A deliberately small FastAPI + Celery app whose only job is to prove the
production chain Nginx -> API -> Redis broker -> Celery worker -> PgBouncer
-> PostgreSQL end to end. See compose/app/README.md.
"""

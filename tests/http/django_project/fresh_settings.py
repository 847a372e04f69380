"""Settings of a fresh ``django-admin startproject``: its apps, middleware and templates, and
the admin at ``/admin/`` (``fresh_urls``). ``benchmarks/bench_django.py`` measures its
``/admin/login/`` page, the first page a new project shows; ``tests/http/test_django.py``
checks that it serves.

A module apart from the test project's own settings (``settings.py``, which has no middleware,
so that its POST views need no CSRF token), so that neither changes the other. Two departures
from ``startproject``, both for serving rather than developing: ``DEBUG`` is off, and the
database is an in-memory SQLite one (the login page reads nothing from it, so no migration is
needed).
"""

SECRET_KEY = "gearshift-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_project.fresh_urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

"""Settings of the test project: only what serving the views needs."""

SECRET_KEY = "gearshift-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# request.body of the 10 MB test (Django refuses bodies above 2.5 MB by default). File uploads
# above FILE_UPLOAD_MAX_MEMORY_SIZE (2.5 MB, unchanged) go to a temporary file, as in production.
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024

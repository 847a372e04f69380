"""A minimal real Django project for the end-to-end tests (``test_django.py``): no database, no
installed apps, no middleware; views that hash what they receive."""

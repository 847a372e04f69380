"""The URLs of the fresh project (``fresh_settings``): the admin, as ``startproject`` writes them."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]

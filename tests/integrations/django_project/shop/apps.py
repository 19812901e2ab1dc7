from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.integrations.django_project.shop"
    label = "shop"

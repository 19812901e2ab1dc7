from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chatsdk.integrations.django import get_client

from .models import Order


@csrf_exempt
def place_order(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    with transaction.atomic():
        order = Order.objects.create(item=request.GET.get("item", "book"))
        entry = get_client().queue_message("orders", f"order {order.pk}")
    return JsonResponse({"order": order.pk, "entry": entry.id})

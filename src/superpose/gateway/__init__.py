"""The HTTP gateway: JSON calls, durable invocations, HTTP apps, its OpenAPI document."""

from django.urls import path

from . import feedback_views, views

app_name = "chat"

urlpatterns = [
    path("", views.chat_page, name="home"),
    path("c/<int:conversation_id>/", views.chat_page, name="conversation"),
    path("api/conversations/", views.conversation_list, name="conversation_list"),
    path("api/conversations/<int:conversation_id>/", views.conversation_update, name="conversation_update"),
    path("api/conversations/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("api/conversations/delete-all/", views.conversation_delete_all, name="conversation_delete_all"),
    path(
        "c/<int:conversation_id>/export.<str:fmt>",
        views.conversation_export,
        name="conversation_export",
    ),
    path(
        "api/conversations/<int:conversation_id>/messages/",
        views.conversation_messages,
        name="conversation_messages",
    ),
    path("api/messages/<int:message_id>/show/", views.message_show, name="message_show"),
    path("api/messages/<int:message_id>/feedback/", feedback_views.message_feedback, name="message_feedback"),
]

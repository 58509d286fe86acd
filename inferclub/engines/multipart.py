"""Surgical edits of `multipart/form-data` bodies; shared with the hub (see inferclub.multipart)."""

from inferclub.multipart import boundary_of, get_field, get_fields, remove_field, set_field

__all__ = ["boundary_of", "get_field", "get_fields", "remove_field", "set_field"]

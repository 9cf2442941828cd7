"""`routeworker demo`: the whole system on embedded defaults, start to finish, on one machine."""

"""What runs and measures genq: the local stack, the DashScope simulator."""

"""The virtual network shared by the host agent and the gateway: the model and its kernel realisation."""

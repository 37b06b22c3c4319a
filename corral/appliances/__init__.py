"""Appliances: services declared in a service file (image, size, config, data volumes, count),
rendered into instances, compared with what runs (a plan) and converged by the controller."""

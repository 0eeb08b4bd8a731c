"""Compile configs into Dagster definitions; one module per stage."""

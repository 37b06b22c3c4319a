"""The controller: owns the store, runs operations, drives nodes toward the desired state."""

"""The controlled shell that runs inside a bastion session."""

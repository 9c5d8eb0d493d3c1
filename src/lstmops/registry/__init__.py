"""What is released: registration with lineage, the promotion gate, alias moves with an audit trail."""

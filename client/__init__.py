"""The crossrec ClientApp: one node = one silo. Glue between Flower messages and crossrec_core."""

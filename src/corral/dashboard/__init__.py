"""The web dashboard (`corral dashboard`)."""

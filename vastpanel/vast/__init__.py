"""vast.ai: the REST client (`client`) and what an instance's fields mean here (`instance`)."""

"""edge-inference-agent: the edge inference agent for industrial controllers."""

from agent.pydantic_plugins import load_no_plugins

# Before any of the agent's pydantic models can build a validator (agent.pydantic_plugins).
load_no_plugins()

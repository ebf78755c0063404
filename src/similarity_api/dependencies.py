"""Typed accessors over app state, for routes (``Annotated`` dependencies)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from similarity_api.index import SimilarityIndex
from similarity_api.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_index(state: StateDep) -> SimilarityIndex:
    """The index as of the start of the request: a reload never changes it mid-request."""
    return state.require_index()


IndexDep = Annotated[SimilarityIndex, Depends(get_index)]

from __future__ import annotations

from fastapi import APIRouter, Request

from openanalytics.auth.dependencies import ProjectRead, ProjectsRead, load_project
from openanalytics.openapi import error_responses
from openanalytics.projects.schemas import ProjectList, ProjectOut

router = APIRouter(tags=["Projects"])


@router.get(
    "/v1/projects",
    summary="List projects",
    description="The projects this API key can reach (a key belongs to one project).",
    response_model=ProjectList,
    responses=error_responses(400, 401, 403, 429),
)
async def list_projects(request: Request, principal: ProjectsRead) -> ProjectList:
    project = await load_project(request, principal.project_id)
    return ProjectList(projects=[ProjectOut.of(project)])


@router.get(
    "/v1/projects/{project_id}",
    summary="Get a project",
    response_model=ProjectOut,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_project(access: ProjectRead) -> ProjectOut:
    return ProjectOut.of(access.project)

"""ernerf.rendering: rays, occupancy grid, ray marching and compositing (independent of any field)."""

from ernerf.rendering.marcher import RayMarcher, RenderOutputs, composite, intersect_aabb, render_image, render_images
from ernerf.rendering.occupancy import OccupancyGrid
from ernerf.rendering.rays import get_rays, nerf_matrix_to_ngp

__all__ = [
    "OccupancyGrid",
    "RayMarcher",
    "RenderOutputs",
    "composite",
    "get_rays",
    "intersect_aabb",
    "nerf_matrix_to_ngp",
    "render_image",
    "render_images",
]

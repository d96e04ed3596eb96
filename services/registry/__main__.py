from services.core.service import run
from services.registry.service import RegistryServer

run(RegistryServer.from_env)

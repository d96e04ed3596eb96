"""The gateway's OpenAI-compatible endpoint, driven by the real `openai` client: models,
completions and chat completions, streamed and not, paced from the agent's virtual clock,
with the gateway's API keys (a wrong key gets 401)."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

MODEL = "Qwen2.5-7B@ascend-910b2"
# 20x slower than real time, so that the pacing is far above the loaded machine's noise.
SPEED = 0.05


@pytest.fixture
def agent_address(endpoint, closer) -> str:
    agents = [c for c in closer if isinstance(c, AgentServer)]
    return agents[0].address


@pytest.fixture
async def endpoint(common, closer):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        common,
        AgentConfig(chip="ascend-910b2", devices=1, node_id="npu-0", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    await wait_for(lambda: agent.lease.registered.is_set(), what="registration")
    gw = GatewayServer(
        common,
        GatewayConfig(
            api_keys="key-a=alpha",
            registry_addr=reg.address,
            openai_listen="127.0.0.1:0",
            openai_speed_factor=SPEED,
        ),
    )
    await gw.start()
    closer.append(gw)
    assert gw.openai is not None
    return f"http://{gw.openai.address}/v1"


async def test_models_list_the_pools_deployments(endpoint):
    client = openai.AsyncOpenAI(base_url=endpoint, api_key="key-a")
    ids = [m.id async for m in client.models.list()]
    assert MODEL in ids
    assert all(i.endswith("@ascend-910b2") for i in ids)
    # 405B parameters do not fit one 64 GB device: not offered.
    assert "Llama-3.1-405B@ascend-910b2" not in ids
    await client.close()


async def test_streamed_completion_is_paced_by_the_virtual_clock(endpoint):
    client = openai.AsyncOpenAI(base_url=endpoint, api_key="key-a")
    start = time.monotonic()
    stream = await client.completions.create(
        model=MODEL,
        prompt="The cheapest chip for chat is",
        max_tokens=8,
        stream=True,
        seed=7,
        stream_options={"include_usage": True},
    )
    arrivals: list[tuple[float, float, str]] = []
    usage = None
    finish = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.finish_reason:
            finish = choice.finish_reason
            continue
        virtual = (chunk.model_extra or {})["pocgrid_virtual_time_s"]
        arrivals.append((time.monotonic() - start, virtual, choice.text))
    await client.close()
    assert len(arrivals) == 8 and finish == "length"
    assert all(text.strip() for *_, text in arrivals)
    assert usage is not None and usage.completion_tokens == 8 and usage.prompt_tokens == 8
    # Each token arrives no earlier than its virtual time says (scaled by SPEED) after the
    # request was sent: TTFT and TPOT paced in real time, not sent as fast as the agent goes.
    for wall, virtual, _ in arrivals:
        assert wall >= virtual / SPEED, (wall, virtual)
    virtual_tpot = (arrivals[-1][1] - arrivals[0][1]) / 7
    assert virtual_tpot > 0
    # ...and not much later either (the machine is loaded: a generous bound).
    assert arrivals[-1][0] <= arrivals[-1][1] / SPEED + 2.0, arrivals[-1]


async def test_same_seed_gives_the_same_text_and_chat_streams(endpoint):
    client = openai.AsyncOpenAI(base_url=endpoint, api_key="key-a")
    one = await client.completions.create(model=MODEL, prompt="hi", max_tokens=5, seed=3)
    two = await client.completions.create(model=MODEL, prompt="hi", max_tokens=5, seed=3)
    assert one.choices[0].text == two.choices[0].text and one.choices[0].text
    assert one.usage is not None and one.usage.completion_tokens == 5

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Which chip?"}],
        max_tokens=4,
        stream=True,
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces).strip()
    assert len([p for p in pieces if p]) == 4
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Which chip?"}], max_tokens=3
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    await client.close()


async def test_wrong_key_is_401_and_bad_requests_name_the_field(endpoint):
    bad = openai.AsyncOpenAI(base_url=endpoint, api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        await bad.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()
    client = openai.AsyncOpenAI(base_url=endpoint, api_key="key-a", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.completions.create(model="Qwen2.5-7B@no-such-chip", prompt="x")
    assert "no deployment" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as plain:
        await client.completions.create(model="Qwen2.5-7B", prompt="x")
    assert "MODEL@CHIP" in str(plain.value)
    with pytest.raises(openai.BadRequestError) as tokens:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    assert "max_tokens" in str(tokens.value)
    await client.close()


async def test_work_queued_on_the_device_is_not_replayed_in_real_time(endpoint, agent_address):
    """An evaluation's bulk run leaves virtual work on the device's stream; a live client is
    paced by its own service time, not made to wait that backlog out on the wall clock."""
    async with service_channel(agent_address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        backlog = stub.Generate(
            agent_pb2.GenerateRequest(
                request_id="backlog",
                job_id="j",
                model="Qwen2.5-7B",
                precision=common_pb2.PRECISION_BF16,
                input_len=512,
                max_output_tokens=4000,
            ),
            metadata=((TENANT_METADATA_KEY, "alpha"),),
        )
        last = [t async for t in backlog][-1]
    assert last.virtual_time_s > 10  # at SPEED, over 200 s if it were replayed
    client = openai.AsyncOpenAI(base_url=endpoint, api_key="key-a")
    start = time.monotonic()
    stream = await client.completions.create(model=MODEL, prompt="x", max_tokens=4, stream=True)
    virtual = [(c.model_extra or {}).get("pocgrid_virtual_time_s") async for c in stream]
    await client.close()
    took = time.monotonic() - start
    served = [v for v in virtual if v is not None]
    assert len(served) == 4 and served[-1] < 1.0, served
    assert took < served[-1] / SPEED + 5.0, took

// A TypeScript module using megaphone.js's API as an application would: `tsc --noEmit` checks it
// against megaphone.d.ts (tests/unit/test_js_package.py).
import Megaphone, {
  CLOSE_CODES,
  closeAction,
  MegaphoneError,
  type CloseAction,
  type MessageFrame,
  type Published,
  type SubscribeResult,
} from "megaphone-client";

interface Order {
  id: number;
  status: "paid" | "shipped";
}

const mp = new Megaphone(async () => "/ws/connect/?token=abc", { minDelay: 250, publishTimeout: 5000 });
mp.addEventListener("state", (event) => {
  const code: number | undefined = event.detail.code;
  console.log(event.detail.state, code, mp.nextRetryDelay);
});

const orders = mp.subscribe<Order>("orders", {
  since: { offset: 41, epoch: "9f2c01ab" },
  info: { name: "Alice" },
  onMessage: (data, message: MessageFrame<Order>) => {
    if (!(data instanceof Uint8Array)) console.log(data.status, message.offset, message.epoch);
  },
  onSubscribed: (result: SubscribeResult) => console.log(result.recovered, result.missed),
  onRecoveryFailed: () => location.reload(),
  onJoin: (entry) => console.log(entry.client, entry.user),
  onError: (error) => console.log(error.code),
});

async function main(): Promise<void> {
  const published: Published = await mp.publish("orders", { id: 17, status: "paid" }, { msgId: "o-17" });
  await mp.publish("files", new Uint8Array([0, 1, 2]));
  const page = await orders.history({ since: published.offset - 10, limit: 10 });
  for (const message of page.messages) console.log(message.data.id, page.complete);
  const presence = await mp.presence("orders");
  console.log(presence.count, presence.clients.map((c) => c.info));
  const action: CloseAction = closeAction(4401);
  console.log(action, CLOSE_CODES[1009]?.name, orders.offset, orders.epoch);
  try {
    await mp.ping();
  } catch (error) {
    if (error instanceof MegaphoneError) console.log(error.code);
  }
  await orders.unsubscribe();
  mp.disconnect();
}

void main();

/*
 * The conversation saved in the browser: the Origin Private File System where the browser has it,
 * else IndexedDB. One slot, holding the bytes of a state file.
 */

const FILE_NAME = "rwkv-conversation.state";
const DB_NAME = "rwkv-web";
const STORE = "states";

interface OpfsDir {
  getFileHandle(name: string, o?: { create?: boolean }): Promise<{
    getFile(): Promise<Blob>;
    createWritable(): Promise<{ write(data: BufferSource): Promise<void>; close(): Promise<void> }>;
  }>;
}

function opfs(): Promise<OpfsDir> | null {
  const storage = navigator.storage as unknown as { getDirectory?: () => Promise<OpfsDir> } | undefined;
  return typeof storage?.getDirectory === "function" ? storage.getDirectory() : null;
}

function idb(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB cannot be opened"));
  });
}

function idbRequest<T>(store: (s: IDBObjectStore) => IDBRequest<T>, mode: IDBTransactionMode): Promise<T> {
  return idb().then((db) => new Promise<T>((resolve, reject) => {
    const req = store(db.transaction(STORE, mode).objectStore(STORE));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB request failed"));
  }));
}

/** Where saveInBrowser puts it, for the page to say. */
export function storageName(): string {
  return opfs() ? "the browser's private file system (OPFS)" : "IndexedDB";
}

export async function saveInBrowser(bytes: Uint8Array): Promise<void> {
  const dir = opfs();
  if (dir) {
    const w = await (await (await dir).getFileHandle(FILE_NAME, { create: true })).createWritable();
    await w.write(bytes as Uint8Array<ArrayBuffer>);
    await w.close();
    return;
  }
  await idbRequest((s) => s.put(bytes, FILE_NAME), "readwrite");
}

/** The saved bytes, or null when nothing was saved. */
export async function loadFromBrowser(): Promise<Uint8Array | null> {
  const dir = opfs();
  if (dir) {
    try {
      return new Uint8Array(await (await (await (await dir).getFileHandle(FILE_NAME)).getFile()).arrayBuffer());
    } catch (e) {
      if ((e as DOMException).name === "NotFoundError") return null;
      throw e;
    }
  }
  const v = await idbRequest((s) => s.get(FILE_NAME) as IDBRequest<Uint8Array | undefined>, "readonly");
  return v ?? null;
}

export * from './openai-store.interface.js';
export * from './memory.store.js';
export * from './redis.store.js';
export * from './resilient.store.js';
export { createStore } from './create-store.js';
export { clusterKeySlot } from './cluster-slot.js';
export {
  CLUSTER_DEFAULTS,
  type ClusterHealth,
  type RedisClusterConfig,
  type RedisClusterNode,
} from './redis-cluster.js';

export * from './moderate.decorator.js';
export * from './moderation.exceptions.js';
export * from './moderation.service.js';
export * from './moderation.pipe.js';
export * from './extract-texts.js';

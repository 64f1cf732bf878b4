import { SetMetadata } from '@nestjs/common';

export const IS_PUBLIC = 'sample:isPublic';
/** Route served without a bearer token. */
export const Public = () => SetMetadata(IS_PUBLIC, true);
